"""The run engine: one asyncio loop that decides what happens next, journaling first."""
