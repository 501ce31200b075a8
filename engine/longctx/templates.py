"""The literal prompt templates, each split into context / question / answer prefix.

Concatenated, the three parts of a RULER task equal RULER's `template + answer_prefix`
(scripts/data/synthetic/constants.py at c3f5e3b4) with the model template 'base'; the needle and
passkey parts concatenate to ReST-KV's and Landmark Attention's prompts.  The tests compare them
with long-context-eval.md §2.3–2.6, §3.1 and §3.2 word for word.
"""

# ---- RULER niah (§2.3): plural form; niah_singular() derives the singular one as RULER does
NIAH_CONTEXT = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
                "I will quiz you about the {type_needle_v} afterwards.\n{context}\n")
NIAH_QUESTION = "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
NIAH_ANSWER = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."

NOISE_LINE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def niah_singular(template: str) -> str:
    """RULER's rewrite for q·v = 1 (niah.py): Some→A, 'are all'→is, are→is, answers→answer.
    Applied to the template before formatting, so the haystack and the needles are untouched."""
    return (template.replace("Some", "A").replace("are all", "is").replace("are", "is")
            .replace("answers", "answer"))


# ---- RULER vt (§2.4)
VT_CONTEXT = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
VT_QUESTION = "Question: Find all variables that are assigned the value {query} in the text above."
VT_ANSWER = (" Answer: According to the chain(s) of variable assignment in the text above, "
             "{num_v} variables are assigned the value {query}, they are: ")

# ---- RULER cwe (§2.5)
CWE_CONTEXT = ("Below is a numbered list of words. In these words, some appear more often than others. "
               "Memorize the ones that appear most often.\n{context}\n")
CWE_QUESTION = "Question: What are the 10 most common words in the above list?"
CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"

# ---- RULER fwe (§2.6)
FWE_CONTEXT = ("Read the following coded text and track the frequency of each coded word. "
               "Find the three most frequently appeared coded words. {context}\n")
FWE_QUESTION = ("Question: Do not provide any explanation. Please ignore the dots '....'. "
                "What are the three most frequently appeared words in the above coded text?")
FWE_ANSWER = " Answer: According to the coded text above, the three most frequently appeared words are:"

# ---- ReST-KV needle test (§3.1), run_needle_in_haystack.py generate_prompt(); `<|im_start|>` is
# literal text there (BOS is added separately) and stays literal text here: the runner tokenizes
# without parsing special tokens.
NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
NEEDLE_RETRIEVAL_QUESTION = "The best thing to do in San Francisco is: "
NEEDLE_CONTEXT = "<|im_start|> This is a very long story book: <book> {context} </book>.\n"
NEEDLE_QUESTION = " Based on the content of the book, Question: {question}"
NEEDLE_ANSWER = "\nAnswer:"

# ---- passkey retrieval, Landmark Attention llama/run_test.py (§3.2); its five lines are joined
# with "\n", the last one split into question and answer prefix.
PASSKEY_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                "I will quiz you about the important information there.")
PASSKEY_INFO = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key?"
PASSKEY_ANSWER = " The pass key is"
