"""The offline corpus: public-domain books shipped by pinned Debian packages (``data.debian_sources``).

=================  ===================  ==========  ============================================================
name               package              characters  text
=================  ===================  ==========  ============================================================
austen             r-cran-janeaustenr    4.0M       six Jane Austen novels: R character vectors, one line each
web_bible          sword-text-web        4.9M       World English Bible with Deuterocanon: SWORD zText module
moby_dick          r-cran-tokenizers     1.2M       Moby Dick (the ``mobydick`` dataset; one string, Gutenberg)
henry_commentary   sword-comm-mhcc       3.9M       Matthew Henry's Concise Commentary on the Whole Bible (abridged
                                                    from his 1706-1714 commentary): SWORD zCom module
treasury_of_david  sword-comm-tdavid    11.8M       C. H. Spurgeon's Treasury of David (1869-1885), commentary on
                                                    the Psalms with quoted older writers: SWORD zCom4 module
=================  ===================  ==========  ============================================================

Characters are those of the cleaned text. Each reader takes the folder a package was extracted to and
yields ``(title, clean text)`` per work. Each source carries its ``licence`` as read from the package's
``/usr/share/doc/<package>/copyright`` (and the SWORD ``.conf``); the manifest records it per source.
The two commentaries quote the Bible in the King James wording, not the World English Bible's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pvs.data.corpus.debian import PinnedDeb
from pvs.data.corpus.rdata import LazyLoadDB
from pvs.data.corpus.sword import ZTextModule
from pvs.data.corpus.text import clean_text, strip_gutenberg

R_LIBRARY = Path("usr/lib/R/site-library")
SWORD_WEB = Path("usr/share/sword/modules/texts/ztext/engWEB2015eb")
SWORD_MHCC = Path("usr/share/sword/modules/comments/zcom/mhcc")
SWORD_TDAVID = Path("usr/share/sword/modules/comments/zcom/tdavid")
AUSTEN_NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")


def read_austen(root: Path) -> Iterator[tuple[str, str]]:
    """The six novels in publication order; hard-wrapped lines joined into paragraphs."""
    db = LazyLoadDB(root / R_LIBRARY / "janeaustenr" / "data" / "Rdata")
    for name in AUSTEN_NOVELS:
        lines = db.character(name)
        yield name, clean_text("\n".join(line or "" for line in lines), unwrap=True)


def read_moby_dick(root: Path) -> Iterator[tuple[str, str]]:
    """Moby Dick without the Project Gutenberg header and licence."""
    db = LazyLoadDB(root / R_LIBRARY / "tokenizers" / "data" / "Rdata")
    text = "\n".join(part or "" for part in db.character("mobydick"))
    yield "mobydick", clean_text(strip_gutenberg(text), unwrap=True)


def read_web_bible(root: Path) -> Iterator[tuple[str, str]]:
    """Every book of the World English Bible (and its preface), markup stripped."""
    yield from ZTextModule(root / SWORD_WEB).books()


def read_henry_commentary(root: Path) -> Iterator[tuple[str, str]]:
    """Matthew Henry's notes book by book (Genesis to Revelation), each note once.

    The module's ``.conf`` names the zCom4 driver but its entry index has 10-byte records (plain zCom).
    """
    yield from ZTextModule(root / SWORD_MHCC, block_type="b", linked_once=True).books()


def read_treasury_of_david(root: Path) -> Iterator[tuple[str, str]]:
    """The Treasury of David: preface, then per psalm exposition, explanatory notes and hints, as one work."""
    yield from ZTextModule(root / SWORD_TDAVID, block_type="c", wide_sizes=True, linked_once=True).books()


@dataclass(frozen=True)
class Licence:
    """A source's licence: a short SPDX-like identifier and a one-line statement of what it covers."""
    id: str
    statement: str

    def record(self) -> dict:
        return {"id": self.id, "statement": self.statement}


@dataclass(frozen=True)
class DebianSource:
    name: str
    package: PinnedDeb
    read: Callable[[Path], Iterator[tuple[str, str]]]
    licence: Licence


DEBIAN_SOURCES = {
    source.name: source
    for source in (
        DebianSource("austen", PinnedDeb("r-cran-janeaustenr", "1.0.0-1",
                                         "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"),
                     read_austen,
                     Licence("MIT", "package MIT (debian/copyright); the novels (1811-1817) are in the "
                                    "public domain (Project Gutenberg text)")),
        DebianSource("web_bible", PinnedDeb("sword-text-web", "426.0-1",
                                            "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1"),
                     read_web_bible,
                     Licence("public-domain", "the World English Bible is dedicated to the public domain "
                                              "('World English Bible' is a trademark of eBible.org)")),
        DebianSource("moby_dick", PinnedDeb("r-cran-tokenizers", "0.3.0-1",
                                            "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7"),
                     read_moby_dick,
                     Licence("MIT", "package MIT (debian/copyright); Moby Dick (1851) is in the public domain "
                                    "(Project Gutenberg text, its licence header stripped)")),
        DebianSource("henry_commentary",
                     PinnedDeb("sword-comm-mhcc", "2.0-1",
                               "06f748215de78ff48fdfdee93e3ffc5af6318b976485f7aedf22309236967e35"),
                     read_henry_commentary,
                     Licence("public-domain", "'Public Domain--Copy Freely' (debian/copyright; Matthew Henry, "
                                              "d. 1714; Bible Foundation electronic text)")),
        DebianSource("treasury_of_david",
                     PinnedDeb("sword-comm-tdavid", "2.1-1",
                               "bcbfad701c5c4a061475b58309cebc42755a59e87478c8355227c5e046412b3f"),
                     read_treasury_of_david,
                     Licence("public-domain", "public domain (debian/copyright: C. H. Spurgeon, final volume "
                                              "1885)")),
    )
}
