"""hw2: the deep-learning homework 2 (FoodCNN, CharLM) on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
