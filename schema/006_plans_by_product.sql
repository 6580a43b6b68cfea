-- Plans by product. A product sold with a monthly and a yearly price, or one price per
-- currency, is one plan: `stripe_product_id` names the Stripe product, and any price of it
-- grants the plan unless another plan names that exact price in `stripe_price_id` (or, for
-- a legacy Stripe plan, in `stripe_plan_id`, which Stripe also accepts as a price id).
alter table public.plans add column stripe_product_id text;
alter table public.plans add constraint plans_stripe_product_id_key unique (stripe_product_id);

-- Until now README described `stripe_plan_id` as the product id that product.* events
-- match. A plan that holds a product id there (Stripe product ids start with prod_) gets it
-- as its product too; `stripe_plan_id` keeps its value, which as a price id matches nothing.
update public.plans p
   set stripe_product_id = p.stripe_plan_id
 where p.stripe_product_id is null
   and p.stripe_plan_id like 'prod\_%'
   and not exists (select from public.plans q where q.stripe_product_id = p.stripe_plan_id);

-- The mirror keeps the product of each item's price, in the same order as price_ids
-- (product_ids[i] is the product of price_ids[i]). Rows written before this migration have
-- none until their subscription's next event or a `sync`.
alter table webhook_private.subscriptions
  add column product_ids text[] not null default '{}';
