"""A model's concept dictionary: its neurons clustered once over a reference index, so that a
concept is the same neurons on every image (:mod:`~conceptree.dictionary.build`), and the
concepts of one image read from it without clustering (:mod:`~conceptree.dictionary.concepts`)."""

from .build import DEFAULT_K, DictionaryBuilder, build_dictionary
from .concepts import CONCISE_CAP, CONCISE_SHARE, concise_list, dictionary_concepts, neuron_relevance
from .store import ConceptDictionary, DictionaryConcept

__all__ = ["CONCISE_CAP", "CONCISE_SHARE", "DEFAULT_K", "ConceptDictionary", "DictionaryBuilder", "DictionaryConcept",
           "build_dictionary", "concise_list", "dictionary_concepts", "neuron_relevance"]
