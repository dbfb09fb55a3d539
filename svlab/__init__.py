"""svlab: a workbench for memory-efficient training and compression of speaker models."""
