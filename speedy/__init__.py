"""Speedy: a distributed Docker/OCI image registry on Twisted."""
