-- Three sample plans (`python -m webhook seed-plans`). Each is inserted only if no plan
-- with its name exists yet, so seeding twice changes nothing. The stripe_price_id and
-- stripe_product_id values are placeholders that `python -m webhook trigger` uses offline;
-- replace them with your own Stripe ids before taking real payments. Any price of a
-- sample product grants its plan (try `trigger --price price_sample_pro_yearly
-- --product prod_sample_pro`).
create temporary table sample_plans on commit drop as
select * from (values
  (1, 'Basic', 9.99, '["Feature 1", "Feature 2"]', 'Basic plan for starters',
   '{"api_calls": 1000, "storage_gb": 10}', 'price_sample_basic', 'prod_sample_basic'),
  (2, 'Pro', 19.99, '["Feature 1", "Feature 2", "Feature 3"]', 'Pro plan for power users',
   '{"api_calls": 5000, "storage_gb": 50}', 'price_sample_pro', 'prod_sample_pro'),
  (3, 'Enterprise', 49.99, '["Feature 1", "Feature 2", "Feature 3", "Feature 4"]',
   'Enterprise plan for large organizations', '{"api_calls": 20000, "storage_gb": 200}',
   'price_sample_enterprise', 'prod_sample_enterprise')
) as v(ord, name, price, benefits, description, resources, stripe_price_id, stripe_product_id);

insert into public.plans
  (name, price, price_currency, benefits, description, resources, stripe_price_id, stripe_product_id)
select v.name, v.price, 'eur', v.benefits::jsonb, v.description, v.resources::jsonb,
       v.stripe_price_id, v.stripe_product_id
from sample_plans v
where not exists (select from public.plans p where p.name = v.name)
  and not exists (select from public.plans p where p.stripe_price_id = v.stripe_price_id)
  and not exists (select from public.plans p where p.stripe_product_id = v.stripe_product_id)
-- In the listed order, so the ids of a fresh database are Basic 1, Pro 2, Enterprise 3
-- (the anti-joins above may otherwise hand the rows over in any order).
order by v.ord;

-- Sample plans seeded before they had product ids get theirs.
update public.plans p
   set stripe_product_id = v.stripe_product_id
  from sample_plans v
 where p.stripe_price_id = v.stripe_price_id and p.stripe_product_id is null
   and not exists (select from public.plans q where q.stripe_product_id = v.stripe_product_id);
