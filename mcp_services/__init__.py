"""TORI Memory: episodic vault, sleep consolidation, sparse pruning and Koopman dynamics."""
