"""Wire protocol test vectors: the JSON files here, their convention and generator."""
