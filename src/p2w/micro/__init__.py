"""p2w's micro world: Fashion-MNIST items in eight colours (``world``, plain data), the embedded
``p2w-micro-fashion`` model's demo (``demo``, an application over the library)."""
