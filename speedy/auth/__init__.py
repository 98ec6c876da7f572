"""
Who may use an imageserver, and for what (issue 17): HTTP Basic
credentials checked against an htpasswd file of bcrypt entries
(L{speedy.auth.htpasswd}, through C{twisted.cred}), an access-control file
of allow rules (L{speedy.auth.access}), what each request asks for
(L{speedy.auth.scopes}), and the gate in front of every route that puts
them together (L{speedy.auth.gate}).
"""
