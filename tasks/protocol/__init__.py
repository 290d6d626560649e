"""What crosses the broker: the stable task names, building and parsing the messages, and
the JSON decoder registered with kombu. Shared by the client and the worker."""
