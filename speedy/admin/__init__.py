"""
C{speedy-admin}: the one operator command of a Speedy cluster.

It talks to the chunkmaster's admin API (C{/v1/admin/...}) with the admin
token; every subcommand prints a table on a terminal, or JSON with
C{--json} for scripts.  Subcommands live one to a module and are listed in
L{speedy.admin.cli.COMMANDS}.
"""
