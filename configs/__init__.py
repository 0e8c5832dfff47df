"""Ready experiment configs (YAML), shipped as package data so the default always loads."""
