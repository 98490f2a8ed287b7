"""Starting and supervising task processes: the only package that spawns them."""
