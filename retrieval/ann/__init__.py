"""FAISS: the only code that imports faiss."""
