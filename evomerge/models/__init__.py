"""Source models: safetensors I/O, opened model directories, tensor kinds per architecture,
and the example model families built offline."""
