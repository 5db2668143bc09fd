"""The door: the checks every instance passes, its durable spool write and its instance record."""
