"""
Sphinx configuration for primed's documentation.

Builds offline: no intersphinx, nothing fetched.  C{sphinx-build -W docs OUT}
must stay free of warnings (tests/test_docs.py builds it that way), and the
man pages (C{sphinx-build -b man docs man}) are committed under C{man/}, so
everything that goes into them must be deterministic: the date below is
fixed rather than the build's.
"""

import configparser
import os

_here = os.path.dirname(os.path.abspath(__file__))
_setup = configparser.ConfigParser()
_setup.read(os.path.join(_here, os.pardir, "setup.cfg"), encoding="utf-8")

project = "primed"
author = "the primed developers"
_COPYRIGHT = "2026, the primed developers"
copyright = _COPYRIGHT
# One place for the version: setup.cfg.
release = _setup["metadata"]["version"]
version = release

# The man pages carry this date; a build's own date would make every
# regeneration differ from the committed pages.  Set it at each release.
today = "December 2026"

# The API reference: pydoctor (as Twisted's docs) reads primed's epytext
# docstrings and writes its own HTML into the site's api/ folder.  The
# extension runs it for the html builder only (the man builder never starts
# it), and replaces the placeholder docs/api/index.rst's output with
# pydoctor's at the end of the build.
#
# Offline: no --intersphinx (it fetches), so names of Twisted and of Python
# stay plain text.  That leaves ~100 "Cannot find link target" notes, and the
# extension turns every line pydoctor prints into a Sphinx warning, which -W
# makes fatal: hence a second -q (the extension passes one), at which
# pydoctor prints nothing.  A docstring that does not parse is then silent
# too, so tests/test_docs.py runs pydoctor at one -q and fails on any line
# other than an unresolved link.
# No pydoctor_url_path: that would add an intersphinx mapping.
extensions = ["pydoctor.sphinx_ext.build_apidocs"]
PYDOCTOR_ARGS = [
    "--docformat=epytext",
    "--project-name=primed",
    "--project-version=" + release,
    "--quiet",
    os.path.join(_here, os.pardir, "primed"),
]
pydoctor_args = PYDOCTOR_ARGS + ["--html-output={outdir}/api"]
root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []
# ``text`` is literal text (an option, a file name), not a cross-reference.
default_role = "literal"
highlight_language = "none"
nitpicky = True

html_theme = "alabaster"
html_title = "primed %s" % release
html_static_path = []
html_theme_options = {
    "description": 'A Twisted daemon that answers "is this integer prime?"',
    "fixed_sidebar": False,
}

# Sphinx's man builder; the pages are committed in man/ and installed with
# the package (setup.cfg, data_files).
man_pages = [
    ("man/primed", "primed", 'the "is this integer prime?" daemon', [author], 8),
    ("man/primed-client", "primed-client", "ask a primed daemon whether integers are prime",
     [author], 1),
]
man_show_urls = False
man_make_section_directory = False


def setup(app):
    """
    In the man pages a cross-reference to another page of these docs can
    only be its text: Sphinx 9's man writer with docutils 0.22 would print
    it followed by an empty C{<>}.
    """
    from docutils import nodes
    from sphinx.transforms.post_transforms import SphinxPostTransform

    class PlainReferences(SphinxPostTransform):
        default_priority = 999
        builders = ("man",)

        def run(self, **kwargs):
            for node in list(self.document.findall(nodes.reference)):
                uri = node.get("refuri", "")
                if not uri.startswith(("http:", "https:", "mailto:", "ftp:")):
                    node.replace_self(nodes.inline("", "", *node.children))

    app.add_post_transform(PlainReferences)

    def keepCopyright(app, config):
        """
        Sphinx rewrites this year to C{SOURCE_DATE_EPOCH}'s when that is
        set and earlier (after priority 800's handler): the committed man
        pages must come out the same whoever builds them.
        """
        config.copyright = _COPYRIGHT

    app.connect("config-inited", keepCopyright, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
