"""A real prompt corpus, assembled offline from text that Debian packages ship."""
