"""One audit of one target: scan the encoders (``components``), run every check, apply the policy (``gate``),
write the reports (``run``). Below it sit sources, encoders, scan, checks and report; above it the API."""
