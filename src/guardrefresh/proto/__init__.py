"""Generated from proto/rule_installation.proto by scripts/generate_proto.py. Do not edit."""
