"""Pure image work: decode, segment, post-process, matting, compose, encode."""
