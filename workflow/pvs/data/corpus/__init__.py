"""Corpus readers for the data stage (``pvs.data``), one module per concern.

debian   fetch pinned .deb files with apt, verify sha256, unpack with dpkg-deb
rdata    R lazy-load databases (Rdata.rdb/.rdx) -> Python values (character vectors)
sword    SWORD zText Bible modules -> clean text per book
books    the pinned Debian books of ``data.debian_sources`` and their readers
text     cleaning and cutting text into documents
sources  documents from ``data.source``: debian, local_text or hf
bpe      the byte-level BPE tokenizer and token encoding
"""
