"""One reader per corpus: conversations as dialogues (:mod:`.dialogues`; MELD, EmoryNLP,
IEMOCAP, GoEmotions, and robot views of them) and faces (FER2013's layouts and a folder per
class). Below training and runtime: both read corpora, neither is needed to read one."""
