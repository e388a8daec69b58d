"""Build machinery: content hashes and keys, the artifact store, the doit loader."""
