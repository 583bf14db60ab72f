"""tunesmith's in-tree plugins: one small module of hookimpls per thing they implement."""
