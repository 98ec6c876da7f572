"""C{python -m speedy.admin}: the same as the C{speedy-admin} console script."""

from speedy.admin.cli import main

main()
