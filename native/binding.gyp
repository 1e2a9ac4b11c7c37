{
  "targets": [
    {
      "target_name": "hyper_native",
      "sources": ["crc32c.c"],
      "cflags": ["-O3"]
    }
  ]
}
