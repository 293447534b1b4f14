"""The offline corpus: public-domain books shipped by pinned Debian packages (``data.debian_sources``).

==========  ========================  ====================================================================
name        package                   text
==========  ========================  ====================================================================
austen      r-cran-janeaustenr        six Jane Austen novels: R character vectors, one line each
web_bible   sword-text-web            World English Bible with Deuterocanon: SWORD zText module, OSIS XML
moby_dick   r-cran-tokenizers         Moby Dick (the ``mobydick`` dataset; one string, Gutenberg edition)
==========  ========================  ====================================================================

Each reader takes the folder a package was extracted to and yields ``(title, clean text)`` per work.
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


@dataclass(frozen=True)
class DebianSource:
    name: str
    package: PinnedDeb
    read: Callable[[Path], Iterator[tuple[str, str]]]


DEBIAN_SOURCES = {
    source.name: source
    for source in (
        DebianSource("austen", PinnedDeb("r-cran-janeaustenr", "1.0.0-1",
                                         "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"),
                     read_austen),
        DebianSource("web_bible", PinnedDeb("sword-text-web", "426.0-1",
                                            "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1"),
                     read_web_bible),
        DebianSource("moby_dick", PinnedDeb("r-cran-tokenizers", "0.3.0-1",
                                            "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7"),
                     read_moby_dick),
    )
}
