"""The parts of tools/setup_env.py, one job each. Standard library only: the
installer runs on any Python >= 3.9 before anything is installed."""
