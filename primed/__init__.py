"""
primed: a Twisted daemon that answers "is this integer prime?" over TCP and
UDP.  Run it with C{twistd -n primed}; the documentation is in docs/.
"""
