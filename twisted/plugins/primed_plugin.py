"""
The twistd dropin for primed: C{twistd -n primed}, C{twist primed}.

Deliberately tiny: twistd imports every dropin to list them, so nothing here
may import a reactor or primed itself.  There is no C{__init__.py} in this
directory, on purpose: C{twisted.plugins} belongs to Twisted.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

primed = ServiceMaker(
    "primed",
    "primed.tap",
    "Answer 'is this integer prime?' over TCP and UDP.",
    "primed",
)

# twistd --reactor=primed; also what twistd -n primed installs by default.
primedReactor = Reactor(
    "primed",
    "primed.reactor",
    "epoll(4) reactor with a lean read path (primed's default).",
)
