"""The API's route modules (thin: parse, call shared/, shape the answer); services.api.app mounts them."""
