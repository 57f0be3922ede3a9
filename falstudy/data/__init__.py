"""Data: documents from packages or local files, tokenizers, and memory-mapped token shards."""

from falstudy.data.prepare import prepare
from falstudy.data.shards import TokenShards, load_meta
from falstudy.data.sources import KNOWN_CORPORA, Document, load_corpus
from falstudy.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

__all__ = ["prepare", "TokenShards", "load_meta", "load_tokenizer", "ByteTokenizer", "BPETokenizer",
           "KNOWN_CORPORA", "Document", "load_corpus"]
