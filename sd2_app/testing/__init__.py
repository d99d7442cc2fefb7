"""Test helpers shipped with the package: real hub configs and tiny random-weight repos."""
