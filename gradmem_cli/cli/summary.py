"""What the command line says before it loads its commands."""

# `gradmem`, `gradmem --help` and `gradmem --version` answer from here, before torch and the commands load
# (seconds); tests/test_cli.py checks this table against the commands themselves.
SUMMARY = "Write documents into a few memory vectors by test-time gradient descent; answer from them later."
COMMANDS = {
    "write": "Write text into memory vectors and save them as .gmem files (the text itself is not stored).",
    "ask": "Answer a question from a memory file alone (the source text is not needed).",
    "inspect": "Show a memory file's metadata and sizes; optionally rebuild its text from memory.",
    "eval": "Evaluate memory against no-context and full-context answers on a task; same seed, same numbers.",
    "fit-start": "Fit a starting point for gradmem write on many texts (Reptile), for one model: --init fitted "
                 "--start FILE.",
    "self-study": "Questions and answers the model writes about your texts, to train a reader on (train-reader, "
                  "task: qa).",
    "train": "Meta-train a model to write into memory (GradMem), or a baseline; --resume continues the run in its "
             "folder.",
    "train-reader": "Train a reader (a LoRA on only while reading) for memories the frozen model writes; --resume "
                    "continues its run.",
    "train-eval": "Teacher-forced key-value EM of a trained checkpoint for each number of write steps (the paper's "
                  "heat map).",
    "models": "The built-in model aliases and whether their packages are installed here.",
}
