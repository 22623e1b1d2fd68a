"""What a viewing machine may import: the wire codec, run documents, publisher, subscriber, archive,
input files, CURVE security."""
