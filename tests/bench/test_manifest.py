from fedsparse.bench.manifest import config_hash
from fedsparse.config import load_config


def hash_of(*assignments: str) -> str:
    return config_hash(load_config(assignments=list(assignments),
                                   overrides={"method.name": "pfedgate"}))


def test_the_hash_follows_what_fixes_results_and_ignores_keys_left_at_their_defaults():
    base = hash_of()
    # spelled out at their defaults (a key a later release adds looks like this): same run
    assert hash_of("method.pfedgate.split=5", "strategy.max_update_norm=null") == base
    # where and how it runs does not change what it computes
    assert hash_of("output.dir=elsewhere", "simulation.round_timeout=30") == base
    # anything that changes results does
    assert len({base, hash_of("method.pfedgate.split=4"), hash_of("train.lr=0.01"),
                hash_of("seed=1"), hash_of("strategy.max_update_norm=1.0")}) == 5


def test_a_finished_run_hashed_by_an_older_release_is_kept_if_its_config_means_the_same(tmp_path):
    from fedsparse.bench.manifest import Manifest, RunStatus, run_folder
    from fedsparse.config import dump_config

    config = load_config(overrides={"method.name": "pfedgate"})
    folder = run_folder(tmp_path, "e/seed0")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(config))
    manifest = Manifest("s", {"e/seed0": RunStatus("0ld0ld0ld0ld0ld0", "report", "e", 0, 0, "done")})
    now = RunStatus(config_hash(config), "report", "e", 0, 0)
    assert not manifest.needs_run(tmp_path, "e/seed0", now)
    assert manifest.runs["e/seed0"].hash == now.hash and folder.is_dir()
    changed = RunStatus(hash_of("train.lr=0.5"), "report", "e", 0, 0)
    assert manifest.needs_run(tmp_path, "e/seed0", changed) and not folder.exists()
