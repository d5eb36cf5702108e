"""One module per user action: read the inputs, call the library, write the outputs, return a result.

The CLI (:mod:`defectfusion.cli`) parses arguments and prints; each of its commands calls one
function here. These functions are also the Python API of the commands.
"""
