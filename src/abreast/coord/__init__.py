"""Coordination state: the durable journal, and (with Redis) what orchestrators share."""
