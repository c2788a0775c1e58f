"""Network input/output: safe fetching of user-supplied URLs."""
