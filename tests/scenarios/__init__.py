"""What crosses modules, in-process: one scenario table run through both adapters."""
