"""Sockets, without HTTP: a buffered endpoint with deadlines, dialling, and the byte pipe."""
