"""``fedsparse bench``: fair comparisons as one command. A suite tunes every entry on the clients'
validation splits with seeds it never reports, runs the selected settings on the reported
seeds, and writes a leaderboard with intervals, paired differences and every cost charged."""
