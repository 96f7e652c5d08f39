"""Routed-expert execution: hosted experts loaded lazily, computed with the architecture's own class."""
