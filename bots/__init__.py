"""Platform adapters: each turns platform events into IncomingMessage and sends OutgoingMessage back."""
