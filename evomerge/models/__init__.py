"""Opening source models: safetensors I/O, model directories, the architecture map."""
