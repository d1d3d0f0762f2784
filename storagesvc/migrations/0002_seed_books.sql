-- A few books so a fresh deployment has something to show. A migration runs exactly once
-- per database, so restarts never insert them again.
INSERT INTO books (title, author, "desc") VALUES
    ('One book', 'John Doe', ''),
    ('Designing Data-Intensive Applications', 'Martin Kleppmann', 'Reliable, scalable and maintainable systems.'),
    ('Release It!', 'Michael T. Nygard', 'Design and deploy production-ready software.');
