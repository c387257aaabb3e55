"""The command-line programs; the top-level scripts (train.py, evaluate.py, retrieval.py, recipe.py) call their main()."""
