"""What operators see: the admin listener, its snapshot of the counts, the exposition, `dprl status`."""
