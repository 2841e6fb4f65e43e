"""Reading a model's answers: prompt formats and answer parsing (``answers``), benchmark
accuracy by scoring candidates or generating (``scoring``)."""
