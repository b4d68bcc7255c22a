"""Discriminative domain: encoder text classifiers, the offline text benchmark (data.py) and GLUE."""
