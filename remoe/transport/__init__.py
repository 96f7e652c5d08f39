"""Wire-level pieces shared by every service: tensor codec, stream multiplexing, status mapping."""
